"""A module of the application's own, on the :mix_app pool's sys.path."""

from collections.abc import Iterator


def greet(name: str, punctuation: str = "!") -> str:
    return f"Hello, {name}{punctuation}"


def words(text: str) -> Iterator[str]:
    yield from text.split()
