"""Scripts that print the numbers the issues ask for (not timed tests)."""
