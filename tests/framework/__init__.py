"""Ember's end-to-end test framework: what the real-guest tests (tests/e2e, on pytest) and
the benchmarks (tools/bench) are built from.

- `common`: the repository's paths, `Ctx` (what a test gets: built artefacts, a scratch
  directory, whether the KVM host is emulated), `CaseFailed`, `EmulatedHostFault`, `expect`.
- `build`: where guests can run (hardware KVM or an emulated KVM host), building ember and
  the guest images, staging them, and the emulated host's known fault signatures.
- `emuhost`: booting the emulated KVM host that runs the suite inside it, restarting it for
  the tests not yet done when it wedges.
- `vm`: VMM processes and their consoles, guest configurations, the `MicroVM` builder the
  `microvm` fixture returns, QEMU as the reference VMM.
- `api`: an HTTP client over a Unix socket (ember's API and emberd's).
- `net`: network namespaces and taps.
- `agent`: emberd run for real in its own state directory, with an `emberctl` helper.
- `plugin`: the pytest plugin (options, markers, fixtures, retries, results) that
  tests/e2e/conftest.py loads.
"""
