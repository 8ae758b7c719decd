#!/bin/sh
hitch --config=/work/main/tuning/runs/2026-11-23-perf/compare-final/conf/hitch-19444.conf &
exec hitch --config=/work/main/tuning/runs/2026-11-23-perf/compare-final/conf/hitch-19443.conf
