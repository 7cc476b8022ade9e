#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build (base-builder-python): one binary per fuzz/*_fuzzer.py, with
# its seed corpus, dictionary and libFuzzer options (max_len, timeout, rss limit) from
# fuzz/harnesses.toml. Run from the repository root, as the project's .clusterfuzzlite/ or
# oss-fuzz projects/<name>/ build script does:
#
#     cd "$SRC/spice-migration-gateway" && fuzz/build.sh
#
# Needs $OUT and the compile_python_fuzzer helper of the base image.

pip3 install .

python3 fuzz/_table.py | while read -r name file max_len timeout rss_limit_mb; do
    binary=${file%.py}
    # PyInstaller follows the harness's imports (its siblings in fuzz/, the installed package);
    # the package's data files (the captured native samples proxy_pair starts from) go along.
    compile_python_fuzzer "fuzz/$file" --collect-data gateway
    if [ -d "fuzz/corpus/$name" ] && [ -n "$(ls -A "fuzz/corpus/$name")" ]; then
        zip -q -j "$OUT/${binary}_seed_corpus.zip" "fuzz/corpus/$name"/*
    fi
    if [ -f "fuzz/dict/$name.dict" ]; then
        cp "fuzz/dict/$name.dict" "$OUT/$binary.dict"
    fi
    printf '[libfuzzer]\nmax_len = %s\ntimeout = %s\nrss_limit_mb = %s\n' \
        "$max_len" "$timeout" "$rss_limit_mb" > "$OUT/$binary.options"
done
