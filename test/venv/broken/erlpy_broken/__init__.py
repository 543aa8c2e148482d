"""Never installed: its project has a BUILD_FAILS file, so its build fails."""
