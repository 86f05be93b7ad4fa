"""The face stage: find faces, place landmarks, cut the chip each release was trained on."""
