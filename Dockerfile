# The app and trainer on a CPU, installed from the wheel (not an editable checkout): the image runs
# what `pip install monosemantic` gives a user. Stage 1 builds the wheel (sdist first, then the
# wheel from it, as a release is built); stage 2 installs it and nothing else of the repository.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY monosemantic monosemantic
COPY trainer trainer
COPY app app
COPY templates templates
COPY static static
RUN python -m build --outdir /dist

FROM python:3.11-slim
# torch first and pinned, from PyTorch's CPU index: from PyPI it would be a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/monosemantic-*.whl)[corpus,postgres]" && rm /tmp/monosemantic-*.whl
# A working directory of its own: nothing of the repository is here, pages come from the package.
WORKDIR /srv/monosemantic
EXPOSE 8000
CMD ["monosemantic", "serve", "--host", "0.0.0.0", "--port", "8000"]
