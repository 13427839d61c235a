#!/usr/bin/env bash
# Installs what the Android demo needs, idempotently: Debian packages (JDK, JUnit 4, org.json, aapt/aapt2,
# zipalign, apksigner, Chromium), dx + the API-23 android.jar from Debian bullseye (downloaded with a private apt
# configuration and unpacked into android_demo/tools/, never installed system-wide), and the page's npm packages.
# Checks before installing; a tool that is still missing afterwards is an error (exit 1).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS="$HERE/tools"
APT_PKGS=(openjdk-17-jdk-headless junit4 libandroid-json-org-java aapt zipalign apksigner chromium)
BINS=(javac java keytool aapt aapt2 zipalign apksigner chromium node npm)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "android-tools: apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# dx (dalvik-exchange) and android.jar (API 23) exist only up to Debian bullseye: fetch the .debs, unpack locally.
if [ ! -f "$TOOLS/dx.jar" ] || [ ! -f "$TOOLS/android.jar" ]; then
  echo "android-tools: downloading dalvik-exchange and android-23 from Debian bullseye into $TOOLS"
  mkdir -p "$TOOLS/apt/lists/partial" "$TOOLS/apt/cache/archives/partial" "$TOOLS/debs" "$TOOLS/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
    > "$TOOLS/apt/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$TOOLS/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$TOOLS/apt/lists" -o "Dir::Cache=$TOOLS/apt/cache"
            -o "Dir::State::Status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
  apt-get "${APT_OPTS[@]}" update -qq
  (cd "$TOOLS/debs" && apt-get "${APT_OPTS[@]}" download dalvik-exchange libandroid-23-java)
  for deb in "$TOOLS"/debs/*.deb; do dpkg-deb -x "$deb" "$TOOLS/root"; done
  jar=$(find "$TOOLS/root" -name 'android.jar' -path '*23*' | head -n1)
  [ -n "$jar" ] || { echo "android-tools: android.jar not found in the bullseye packages" >&2; exit 1; }
  cp "$jar" "$TOOLS/android.jar"
  cp "$(readlink -f "$TOOLS/root/usr/share/java/com.android.dx.jar")" "$TOOLS/dx.jar"
fi

# The page's runtime (onnxruntime-web), exactly as pinned in package-lock.json.
if [ ! -f "$HERE/web/node_modules/onnxruntime-web/package.json" ] || \
   [ "$HERE/web/package-lock.json" -nt "$HERE/web/node_modules/.package-lock.json" ]; then
  echo "android-tools: npm ci in $HERE/web"
  (cd "$HERE/web" && npm ci --no-audit --no-fund --loglevel=error)
fi

fail=0
for b in "${BINS[@]}"; do command -v "$b" >/dev/null || { echo "android-tools: $b is missing" >&2; fail=1; }; done
for f in /usr/share/java/junit4.jar /usr/share/java/hamcrest-core.jar /usr/share/java/json-android.jar \
         "$TOOLS/android.jar" "$TOOLS/dx.jar"; do
  [ -f "$f" ] || { echo "android-tools: $f is missing" >&2; fail=1; }
done
exit $fail
