"""supervise: a pre-fork supervisor for Python RPC services."""


def version() -> str:
    """The installed package's version; importlib.metadata is imported only when asked."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("supervise")
    except PackageNotFoundError:
        return "unknown"
