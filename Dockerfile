# The app and trainer on a CPU. torch is pinned to its CPU wheel from PyTorch's CPU index.
FROM python:3.11-slim
WORKDIR /srv/monosemantic
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY trainer trainer
COPY app app
COPY templates templates
COPY static static
RUN pip install --no-cache-dir -e ".[corpus,postgres]"
EXPOSE 8000
CMD ["monosemantic", "serve", "--host", "0.0.0.0", "--port", "8000"]
