// talk chat — placeholder.
