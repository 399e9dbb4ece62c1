"""jaxsafe: a JAX-native, functional library for safe reinforcement learning and safety alignment."""

__version__ = "0.1.0"
