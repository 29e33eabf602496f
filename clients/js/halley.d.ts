// Types for halley.js — placeholder.
