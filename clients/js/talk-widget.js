// talk widget — placeholder.
