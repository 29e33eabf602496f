// halley.js — placeholder until the client lands.
