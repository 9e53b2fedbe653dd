#!/usr/bin/env bash
# One idempotent set-up step: .venv with pinned packages, the interface packages that PyPI lacks
# (vision_msgs, tf2_msgs) built from interfaces/ (with CMake directly: their COLCON_IGNORE keeps
# them out of colcon workspaces, where a ROS install provides them), and peftdml_ros installed
# with its ament layout. Each stage keeps a stamp (a hash of its inputs) in .venv/.setup/, so a
# second run skips everything whose inputs did not change and finishes in seconds.
set -Eeuo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${PEFTDML_VENV:-$repo_dir/.venv}"
python_bin="${PYTHON:-python3.11}"
stamp_dir="$venv_dir/.setup"
build_root="$repo_dir/build/interfaces"

step() { printf '\n[setup] %s\n' "$*"; }
fail() { printf '\n[setup] FAILED in step "%s": %s\n' "$current_step" "$*" >&2; exit 1; }
current_step="start"
trap 'fail "command failed (exit $?) at line $LINENO; see the output above"' ERR

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f "$stamp_dir/$1" && "$(cat "$stamp_dir/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$stamp_dir"; echo "$2" >"$stamp_dir/$1"; }

# --- 1. the virtual environment -----------------------------------------------------------------
current_step="virtual environment"
if [[ ! -x "$venv_dir/bin/python" ]]; then
  command -v "$python_bin" >/dev/null || fail "$python_bin not found; install Python 3.11 or set PYTHON=/path/to/python3.11"
  step "creating $venv_dir with $("$python_bin" --version)"
  "$python_bin" -m venv "$venv_dir"
fi
py="$venv_dir/bin/python"
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || fail "$venv_dir is not Python 3.11 (the ROS 2 Kilted wheels are built for CPython 3.11); remove it and run again"

# --- 2. pinned Python packages -------------------------------------------------------------------
current_step="pinned Python packages"
req_hash="$(hash_of "$repo_dir/requirements/venv.txt")"
if ! stamp_ok packages "$req_hash"; then
  step "installing pinned packages from requirements/venv.txt"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$repo_dir/requirements/venv.txt" \
    || fail "pip could not install requirements/venv.txt (read pip's message above)"
  stamp_set packages "$req_hash"
fi

# --- 3. interface packages not on PyPI -----------------------------------------------------------
# The ROS wheels' CMake export files name the wheel builder's Python include directories; point them
# at this venv's Python and numpy headers, or the generated C extensions cannot compile.
fix_cmake_exports() {
  local py_inc np_inc
  py_inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$py" -c 'import numpy; print(numpy.get_include())')"
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$venv_dir/share" 2>/dev/null || true; } \
    | while read -r f; do
    sed -i -E "s#/opt/python/cp311-cp311/include/python3\.11#$py_inc#g; s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/(_core|core)/include#$np_inc#g" "$f"
  done
}

build_interface() {
  local pkg="$1" module="$2" src="$repo_dir/interfaces/$1"
  current_step="interface package $pkg"
  # The packages' generated C extensions compile against the pinned packages: a new pin rebuilds.
  local h; h="$(hash_of "$src"/CMakeLists.txt "$src"/package.xml "$src"/msg/*.msg "$repo_dir/requirements/venv.txt")"
  if stamp_ok "iface-$pkg" "$h"; then return; fi
  # A ROS install that already provides the package wins: never shadow it with our build.
  if [[ ! -f "$stamp_dir/built-$pkg" ]] && "$py" -c "import $module" 2>/dev/null; then
    step "$pkg is already importable (a ROS install provides it); not building it"
    stamp_set "iface-$pkg" "$h"; return
  fi
  step "building $pkg from interfaces/$pkg"
  fix_cmake_exports
  command -v cmake >/dev/null || fail "cmake not found; install CMake 3.16 or newer"
  command -v ninja >/dev/null || "$py" -m pip install --quiet ninja || fail "ninja not found and could not be installed"
  local build_dir="$build_root/$pkg"
  rm -rf "$build_dir"; mkdir -p "$build_dir"
  (
    cd "$build_dir"
    export AMENT_PREFIX_PATH="$venv_dir" CMAKE_PREFIX_PATH="$venv_dir" PATH="$venv_dir/bin:$PATH"
    cmake "$src" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$venv_dir" \
      -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$py" >cmake-configure.log 2>&1 \
      || { tail -n 30 cmake-configure.log; exit 1; }
    cmake --build . >cmake-build.log 2>&1 || { tail -n 40 cmake-build.log; exit 1; }
    cmake --install . >cmake-install.log 2>&1 || { tail -n 20 cmake-install.log; exit 1; }
  ) || fail "building $pkg failed; the log tail is above, full logs in $build_dir"
  "$py" -c "import $module" || fail "$pkg was built but '$module' does not import"
  stamp_set "built-$pkg" yes
  stamp_set "iface-$pkg" "$h"
}
build_interface vision_msgs vision_msgs.msg
build_interface tf2_msgs tf2_msgs.msg

# --- 4. the package itself -----------------------------------------------------------------------
current_step="install peftdml_ros"
pkg_hash="$(hash_of "$repo_dir/setup.py" "$repo_dir/setup.cfg" "$repo_dir/package.xml" "$repo_dir/scripts/setup_env.sh")"
if ! stamp_ok package "$pkg_hash"; then
  step "installing peftdml_ros (editable)"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$repo_dir" \
    || fail "pip could not install the package (read pip's message above)"
  stamp_set package "$pkg_hash"
fi
# The share/ and lib/ links that ros2 run/launch use, one per file setup.py installs: checked on
# every run (a second one changes nothing and prints nothing), so a new launch file, config or
# model is found without a reinstall.
current_step="ament layout"
layout_changes="$("$py" "$repo_dir/scripts/install_ament_layout.py" --prefix "$venv_dir" --repo "$repo_dir")" \
  || fail "could not write the ament layout (share/peftdml_ros, lib/peftdml_ros) in $venv_dir"
if [[ -n "$layout_changes" ]]; then
  step "ament layout updated ($(wc -l <<<"$layout_changes") links)"
fi

# ROS tools find packages through AMENT_PREFIX_PATH, which a ROS install's setup.bash would set.
current_step="activate script"
if ! grep -q 'peftdml_ros: ament prefix' "$venv_dir/bin/activate"; then
  cat >>"$venv_dir/bin/activate" <<'ACTIVATE'
# peftdml_ros: ament prefix (lets ament_index, ros2 run/launch find the packages in this venv)
case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;; esac
ACTIVATE
fi

current_step="check"
"$py" -c 'import rclpy, vision_msgs.msg, tf2_msgs.msg, torch, onnxruntime, nuscenes, rosbags, peftdml_ros' \
  || fail "a required module does not import in $venv_dir"
echo "[setup] ready: $venv_dir (activate with: source .venv/bin/activate)"
