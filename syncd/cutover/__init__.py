"""`syncd cutover` / `syncd rollback`: fences, drain, the app-config flip, the recorded state."""
