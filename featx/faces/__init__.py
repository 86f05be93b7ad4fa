"""The face stage between the reader and the backbone: find faces, 5 landmarks, the release's chip."""
