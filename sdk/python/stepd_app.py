"""The component's entry point for a Python step: componentize-py builds
this module, whose ``WitWorld.run`` is the world's exported ``run``. It
imports the plugin's own ``step.py`` (at build time: componentize-py
snapshots the interpreter after importing, so a step's import errors fail
the build, not the first attempt) and runs the function ``@stepd.step``
registered there.
"""

import wit_world

import step  # noqa: F401  (the plugin's module; registers its run function)
import stepd


class WitWorld(wit_world.WitWorld):
    def run(self, ctx):
        return stepd._run_registered(ctx)
