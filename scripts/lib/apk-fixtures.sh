# shellcheck shell=bash
# Real, signed APK fixtures for the AutoInstall tests (tests/android_install.rs) and for
# scripts/android-e2e.sh, built from Debian's Android tools.  Source after common.sh, then:
#
#   ensure_apk_fixtures      # builds once into $FERRY_APK_FIXTURES (cached), exports it
#
# What it builds (all code-less apps: android:hasCode="false", so no compiler is needed;
# aapt compiles the manifest and resources against android-framework-res's framework-res.apk,
# zipalign aligns, apksigner signs (v1+v2+v3) with a keystore made by the JDK's keytool):
#
#   fixture.apk              com.ferry.fixture        versionCode 7  versionName 1.2.3
#   fixture-v8.apk           com.ferry.fixture        versionCode 8  versionName 1.3.0
#   split-base.apk           com.ferry.fixture.split  versionCode 3  (base of a split set)
#   split-config.fr.apk      com.ferry.fixture.split  split="config.fr" (aapt --split fr)
#   split.apks               bundletool layout: toc.pb, splits/base-master.apk, splits/base-fr.apk
#   split.xapk               APKPure layout: manifest.json, the two APKs, and
#                            Android/obb/com.ferry.fixture.split/main.3.com.ferry.fixture.split.obb
#   splits.zip               a plain zip of the two split APKs
#   obb.bin                  the expansion file's content (to compare after install)
#
# The cache folder is keyed by this file's hash, so a change to a recipe rebuilds it.  About
# 15 s on 2 cores, most of it the JVM starting keytool and apksigner.

if [[ -n "${_FERRY_APK_FIXTURES_SOURCED:-}" ]]; then
    return 0
fi
_FERRY_APK_FIXTURES_SOURCED=1

FERRY_APK_FIXTURES_BASE="${FERRY_APK_FIXTURES_BASE:-/var/tmp/ferry-apk-fixtures}"
FRAMEWORK_RES=/usr/share/android-framework-res/framework-res.apk

# _apk_build NAME PACKAGE CODE VERSION_NAME OUT_DIR [--split fr]: aapt package into
# OUT_DIR/NAME.apk (and NAME_fr.apk with --split), unsigned.
_apk_build() {
    local name="$1" package="$2" code="$3" version="$4" out="$5"
    shift 5
    local src="$out/src-$name"
    mkdir -p "$src/res/values" "$src/res/values-fr"
    cat >"$src/AndroidManifest.xml" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android"
    package="$package" android:versionCode="$code" android:versionName="$version">
    <uses-sdk android:minSdkVersion="21" android:targetSdkVersion="29"/>
    <application android:label="@string/app_name" android:hasCode="false"/>
</manifest>
EOF
    printf '<resources><string name="app_name">ferry fixture %s</string></resources>\n' \
        "$version" >"$src/res/values/strings.xml"
    printf '<resources><string name="app_name">ferry fixture %s (fr)</string></resources>\n' \
        "$version" >"$src/res/values-fr/strings.xml"
    # -0 arsc: resources.arsc stored uncompressed, as Android 11+ wants it.
    aapt package -f -0 arsc -M "$src/AndroidManifest.xml" -S "$src/res" -I "$FRAMEWORK_RES" \
        -F "$out/$name.unsigned.apk" "$@" >&2 || return 1
}

# _apk_sign IN OUT: zipalign, then apksigner with the fixture key.
_apk_sign() {
    zipalign -f -p 4 "$1" "$1.aligned" >&2 || return 1
    apksigner sign --ks "$WORK/fixture.jks" --ks-pass pass:ferry-fixture \
        --key-pass pass:ferry-fixture --ks-key-alias fixture --out "$2" "$1.aligned" >&2 ||
        return 1
    apksigner verify "$2" >&2
}

# _zip_tree DIR OUT: zips the contents of DIR (relative names) with Python's zipfile.
_zip_tree() {
    (cd "$1" && python3 - "$2" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in sorted(os.walk(".")):
        for f in sorted(files):
            path = os.path.join(root, f)
            z.write(path, os.path.relpath(path, "."))
EOF
    )
}

_build_apk_fixtures() {
    local out="$1"
    WORK="$out"
    keytool -genkeypair -keystore "$WORK/fixture.jks" -storepass ferry-fixture \
        -keypass ferry-fixture -alias fixture -keyalg RSA -keysize 2048 -validity 10000 \
        -dname "CN=ferry test fixture" -noprompt >&2 2>&1 || return 1

    _apk_build fixture com.ferry.fixture 7 1.2.3 "$out" || return 1
    _apk_sign "$out/fixture.unsigned.apk" "$out/fixture.apk" || return 1
    _apk_build fixture-v8 com.ferry.fixture 8 1.3.0 "$out" || return 1
    _apk_sign "$out/fixture-v8.unsigned.apk" "$out/fixture-v8.apk" || return 1

    # aapt --split fr moves the French strings into split-base.unsigned_fr.apk, whose
    # manifest says split="config.fr".
    _apk_build split-base com.ferry.fixture.split 3 3.0 "$out" --split fr || return 1
    _apk_sign "$out/split-base.unsigned.apk" "$out/split-base.apk" || return 1
    _apk_sign "$out/split-base.unsigned_fr.apk" "$out/split-config.fr.apk" || return 1

    local tree="$out/tree"
    rm -rf "$tree" && mkdir -p "$tree/apks/splits" || return 1
    printf '' >"$tree/apks/toc.pb" || return 1
    cp "$out/split-base.apk" "$tree/apks/splits/base-master.apk" || return 1
    cp "$out/split-config.fr.apk" "$tree/apks/splits/base-fr.apk" || return 1
    _zip_tree "$tree/apks" "$out/split.apks" || return 1

    local obb_dir=Android/obb/com.ferry.fixture.split
    local obb_name=main.3.com.ferry.fixture.split.obb
    head -c 300000 /dev/urandom >"$out/obb.bin" || return 1
    mkdir -p "$tree/xapk/$obb_dir" || return 1
    cp "$out/split-base.apk" "$tree/xapk/com.ferry.fixture.split.apk" || return 1
    cp "$out/split-config.fr.apk" "$tree/xapk/config.fr.apk" || return 1
    cp "$out/obb.bin" "$tree/xapk/$obb_dir/$obb_name" || return 1
    cat >"$tree/xapk/manifest.json" <<EOF
{"xapk_version":2,"package_name":"com.ferry.fixture.split","name":"ferry fixture split",
 "version_code":"3","version_name":"3.0","min_sdk_version":"21","target_sdk_version":"29",
 "split_configs":["config.fr"],"total_size":$(($(stat -c %s "$out/split-base.apk") + $(stat -c %s "$out/split-config.fr.apk") + 300000)),
 "split_apks":[{"file":"com.ferry.fixture.split.apk","id":"base"},{"file":"config.fr.apk","id":"config.fr"}],
 "expansions":[{"file":"$obb_dir/$obb_name","install_location":"EXTERNAL_STORAGE","install_path":"$obb_dir/$obb_name"}]}
EOF
    _zip_tree "$tree/xapk" "$out/split.xapk" || return 1

    mkdir -p "$tree/zip" || return 1
    cp "$out/split-base.apk" "$out/split-config.fr.apk" "$tree/zip/" || return 1
    _zip_tree "$tree/zip" "$out/splits.zip" || return 1

    rm -rf "$tree" "$out"/src-* "$out"/*.unsigned* "$out"/*.aligned "$out"/*.idsig
    local f
    for f in fixture.apk fixture-v8.apk split-base.apk split-config.fr.apk split.apks \
        split.xapk splits.zip obb.bin; do
        [[ -s "$out/$f" ]] || { warn "APK fixture $f was not built"; return 1; }
    done
}

# ensure_apk_fixtures: the fixtures in $FERRY_APK_FIXTURES (exported), built when missing.
ensure_apk_fixtures() {
    ensure_apt aapt apksigner zipalign android-framework-res default-jre-headless python3
    local key
    key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
    FERRY_APK_FIXTURES="$FERRY_APK_FIXTURES_BASE/$key"
    if [[ ! -f "$FERRY_APK_FIXTURES/.complete" ]]; then
        mkdir -p "$FERRY_APK_FIXTURES_BASE"
        (
            flock 9
            if [[ ! -f "$FERRY_APK_FIXTURES/.complete" ]]; then
                log "building APK fixtures into $FERRY_APK_FIXTURES"
                local start=$SECONDS
                rm -rf "$FERRY_APK_FIXTURES.tmp" && mkdir -p "$FERRY_APK_FIXTURES.tmp"
                _build_apk_fixtures "$FERRY_APK_FIXTURES.tmp"
                touch "$FERRY_APK_FIXTURES.tmp/.complete"
                rm -rf "$FERRY_APK_FIXTURES" && mv "$FERRY_APK_FIXTURES.tmp" "$FERRY_APK_FIXTURES"
                log "APK fixtures built in $((SECONDS - start)) s"
            fi
        ) 9>"$FERRY_APK_FIXTURES_BASE/.build.lock" || return 1
    fi
    export FERRY_APK_FIXTURES
    log "APK fixtures: $FERRY_APK_FIXTURES"
}
