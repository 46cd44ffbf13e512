"""A reference application for end-to-end cutover tests and benchmarks: :mod:`tests.app.refapp`
writes like the seed NestJS app, configured by its ``.env``; :mod:`tests.app.records` reads its
write log back and compares it with what the stores hold."""
