"""Capture stage: where frames come from (still files, replays; cameras in a later issue)."""
