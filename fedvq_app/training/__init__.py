"""Training and evaluation loops shared by every neural method."""
