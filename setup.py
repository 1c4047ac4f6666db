"""One build step pyproject.toml cannot say: the wheel carries the repository's top-level
templates/ and static/ inside the app package, as app/web/templates and app/web/static, where
app/pages/templating.py finds them (one folder app/web/ for the site's files, apart from the code). An
editable install reads them from the checkout's top level instead."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SITE_DIRS = ("templates", "static")  # top-level folders -> app/web/<name> in the wheel


class build_py_with_site(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in SITE_DIRS:
            self.copy_tree(name, str(Path(self.build_lib, "app", "web", name)))


setup(cmdclass={"build_py": build_py_with_site})
