#!/usr/bin/env bash
# Builds a signed debug APK of the demo without Gradle, from Debian's tools: javac (Java 8 class files against the
# API-23 android.jar), dx (dalvik-exchange), aapt2 link, zipalign, apksigner (v1-v3). The debug key is generated
# here on first use, under android_demo/build/ (git-ignored), and never committed.
# usage: build_apk.sh [--assets DIR] [--out FILE.apk]   (DIR defaults to android_demo/app/assets, which
#        `kdmobile export RUN --target onnx --android-assets android_demo/app/assets` fills)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ASSETS="$HERE/app/assets"
OUT="$HERE/build/kdmobile-demo.apk"
while [ $# -gt 0 ]; do
  case "$1" in
    --assets) ASSETS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--assets DIR] [--out FILE.apk]" >&2; exit 2 ;;
  esac
done
TOOLS="$HERE/tools"
ANDROID_JAR="$TOOLS/android.jar"
ORT="$HERE/web/node_modules/onnxruntime-web/dist"
for t in javac java keytool aapt aapt2 zipalign apksigner; do
  command -v "$t" >/dev/null || { echo "build_apk: $t is missing (make android-tools)" >&2; exit 1; }
done
for f in "$ANDROID_JAR" "$TOOLS/dx.jar" "$ORT/ort.wasm.min.mjs"; do
  [ -f "$f" ] || { echo "build_apk: $f is missing (make android-tools)" >&2; exit 1; }
done
[ -f "$ASSETS/bundles/index.json" ] || {
  echo "build_apk: no bundles in $ASSETS (kdmobile export RUN --target onnx --android-assets $ASSETS)" >&2; exit 1; }

start=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/classes" "$WORK/assets/ort" "$(dirname "$OUT")" "$HERE/build"

# 1. assets: the page, the three ONNX Runtime Web files it loads, and the bundles (+ forecast samples).
cp -r "$ASSETS"/. "$WORK/assets/"
cp "$HERE"/web/{index.html,app.js,kdcore.js,kdsign.js,style.css} "$WORK/assets/"
cp "$ORT"/{ort.wasm.min.mjs,ort-wasm-simd-threaded.mjs,ort-wasm-simd-threaded.wasm} "$WORK/assets/ort/"

# 2. Java 8 bytecode against android.jar (its org.json and java.* are the app's), then dex.
javac -nowarn -source 8 -target 8 -encoding UTF-8 -Xlint:-options -bootclasspath "$ANDROID_JAR" -d "$WORK/classes" \
  $(find "$HERE/core/src/main/java" "$HERE/app/src/main/java" -name '*.java')
java -jar "$TOOLS/dx.jar" --dex --min-sdk-version=26 --output="$WORK/classes.dex" "$WORK/classes"

# 3. manifest + assets -> APK, add classes.dex, align, sign.
sed 's|<manifest |<manifest package="org.kdmobile.demo" |' "$HERE/app/AndroidManifest.xml" > "$WORK/AndroidManifest.xml"
aapt2 link -o "$WORK/unsigned.apk" -I "$ANDROID_JAR" --manifest "$WORK/AndroidManifest.xml" \
  --min-sdk-version 26 --target-sdk-version 26 -A "$WORK/assets"
(cd "$WORK" && aapt add unsigned.apk classes.dex >/dev/null)
zipalign -f -p 4 "$WORK/unsigned.apk" "$WORK/aligned.apk"
KS="$HERE/build/debug.keystore"
if [ ! -f "$KS" ]; then
  keytool -genkeypair -keystore "$KS" -storepass android -keypass android -alias androiddebugkey \
    -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=kdmobile debug,O=kdmobile,C=US" >/dev/null 2>&1
fi
apksigner sign --ks "$KS" --ks-pass pass:android --key-pass pass:android --ks-key-alias androiddebugkey \
  --min-sdk-version 26 --v1-signing-enabled true --v2-signing-enabled true --v3-signing-enabled true \
  --out "$OUT" "$WORK/aligned.apk"
apksigner verify "$OUT"
echo "built $OUT ($(du -k "$OUT" | cut -f1) KiB, $(( $(date +%s) - start )) s); install: adb install -r $OUT"
