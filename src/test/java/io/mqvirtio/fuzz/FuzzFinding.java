package io.mqvirtio.fuzz;

/**
 * A fuzz target's oracle failed: the code under test did something its contract forbids. An {@link Error}, so no
 * {@code catch (RuntimeException)} in the code under test can swallow it on its way to the fuzzer.
 */
final class FuzzFinding extends Error {
    FuzzFinding(String message) {
        super(message);
    }

    FuzzFinding(String message, Throwable cause) {
        super(message, cause);
    }
}
