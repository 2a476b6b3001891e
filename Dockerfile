# The nerd CLI in a container.
#
#   docker build -t my-nerd .
#   docker run --rm my-nerd dataset list                     # any nerd command
#   docker run --rm -v ~/.nerd:/root/.nerd my-nerd login --status
#   docker run --rm -e NERD_JWT="$(nerd login --print-token)" my-nerd login --status
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN --entrypoint nerdfs my-nerd mount -f /mnt
#
# BASE is any Debian-based image with Python >= 3.11 (the official python image by
# default; the tests pass a locally built one). Two stages: compilers only in the first.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# pyfuse3 compiles against libfuse3; Python's headers come with the official image, else from python3-dev.
RUN set -eu; pkgs="gcc libc6-dev pkg-config libfuse3-dev"; \
    include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
    [ -e "$include/Python.h" ] || pkgs="$pkgs python3-dev"; \
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/nerd
COPY pyproject.toml README.md /src/
COPY nerdfs /src/nerdfs
COPY nerdcli /src/nerdcli
RUN /opt/nerd/bin/pip install -q /src && /opt/nerd/bin/pip uninstall -q -y pip setuptools && rm -rf /src

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# FUSE at run time (fusermount3, libfuse3); apt only when the base lacks them.
RUN set -eu; pkgs="fuse3 libfuse3-3 ca-certificates"; \
    n=$(dpkg-query -W -f='${Status}\n' $pkgs 2>/dev/null | grep -c "^install ok installed$" || true); \
    [ "$n" -eq 3 ] && exit 0; \
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/nerd /opt/nerd
ENV PATH=/opt/nerd/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /root
ENTRYPOINT ["nerd"]
CMD ["--help"]
