#!/bin/bash -eu
# ClusterFuzzLite's build step runs $SRC/build.sh in the builder image (see Dockerfile); the
# project's own build script builds every harness of fuzz/ into $OUT.
cd "$SRC/spice-migration-gateway"
fuzz/build.sh
