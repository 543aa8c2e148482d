"""A package of erlpy's test tree, installed into the virtualenvs the venv tests build."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
