"""Services that ship with supervise, registered under the ``supervise.services`` entry points."""
