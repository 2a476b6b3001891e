# Sourced by demo.sh and test.sh: system packages, then a project venv at .venv
# with nerd installed (editable). $1: the pip extras ("" or "test"); extra
# Debian packages may be listed in the APT_PACKAGES array before sourcing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# FUSE for the mount (pyfuse3 builds against libfuse3 with gcc and pkg-config).
packages=(fuse3 libfuse3-dev pkg-config gcc "${APT_PACKAGES[@]}")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=${1:+[$1]}
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" 2>&1 \
  | grep -v "^WARNING: Location 'file:" || true
