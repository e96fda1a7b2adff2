"""The smallest saved flow: try `reops run flows/examples/hello.py --name you`."""

from reops.flows import flow


@flow
def hello(name: str = "world", times: int = 1, shout: bool = False) -> None:
    """Greet someone: shows how parameters become options."""
    greeting = f"hello, {name}"
    for _ in range(times):
        print(greeting.upper() if shout else greeting)
