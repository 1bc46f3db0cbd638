"""Jobs for tests that run real worker processes (JOB_PACKAGES='["tests.process_jobs"]')."""
