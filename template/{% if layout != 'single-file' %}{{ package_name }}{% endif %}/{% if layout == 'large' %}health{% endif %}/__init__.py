"""Health checks: liveness (`/health`) and readiness (`/ready`)."""
