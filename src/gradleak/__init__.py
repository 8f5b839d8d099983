"""gradleak: audit how much private data leaks from federated-learning client updates."""
__version__ = "0.1.0"
