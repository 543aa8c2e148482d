"""A module of the application's own, on every pool's sys.path."""

from collections.abc import Iterator


def greet(name: str, punctuation: str = "!") -> str:
    return f"Hello, {name}{punctuation}"


def words(text: str) -> Iterator[str]:
    yield from text.split()
