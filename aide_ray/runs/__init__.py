"""The run folder and the checkpoint format: what training writes and every other command reads."""
