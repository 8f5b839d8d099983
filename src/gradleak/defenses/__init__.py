"""Gradient obfuscations and defenses applied to the client's upload."""
from gradleak.defenses.base import DEFENSES, ClientContext, Defense, build_defenses, register

__all__ = ["DEFENSES", "ClientContext", "Defense", "build_defenses", "register"]
