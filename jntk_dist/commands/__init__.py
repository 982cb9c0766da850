"""Sub-commands of the ``jntk`` CLI (see :data:`jntk_dist.cli.COMMAND_MODULES`)."""
