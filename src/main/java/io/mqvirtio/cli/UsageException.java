package io.mqvirtio.cli;

/**
 * A command line that cannot be run: a value out of its range, options that do not go together. {@link Main} prints
 * its message on one line and where to read the command's help, and exits with status 2 (as for picocli's own
 * parse errors: unknown options, missing values, values of the wrong type).
 */
final class UsageException extends RuntimeException {
    UsageException(String message) {
        super(message);
    }
}
