#!/bin/sh
hitch --daemon=off --workers=1 --frontend=[127.0.0.1]:19444 --backend=[127.0.0.1]:18081     --tls-protos="TLSv1.2 TLSv1.3" --user=nobody /work/main/tuning/runs/2026-11-23-compare/conf/combined.pem &
exec hitch --daemon=off --workers=1 --frontend=[127.0.0.1]:19443 --backend=[127.0.0.1]:18080     --tls-protos="TLSv1.2 TLSv1.3" --user=nobody /work/main/tuning/runs/2026-11-23-compare/conf/combined.pem
