package io.mqvirtio.cli;

import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.logging.SimpleFormatter;

/**
 * One line per log record on stderr: time, level, source, message; written by a thread of its own
 * ({@link AsyncLogHandler}), so that no thread that logs waits for stderr.
 */
final class Logging {
    private Logging() {}

    static void setup(boolean debug) {
        setup(debug ? Level.FINE : Level.INFO);
    }

    /** Only warnings and errors: for commands whose output is a table. */
    static void quiet() {
        setup(Level.WARNING);
    }

    private static void setup(Level level) {
        System.setProperty("java.util.logging.SimpleFormatter.format", "%1$tT.%1$tL %4$-7s %3$s: %5$s%6$s%n");
        Logger root = Logger.getLogger("");
        for (var h : root.getHandlers()) {
            root.removeHandler(h);
            if (h instanceof AsyncLogHandler a) {
                a.retire(); // its thread would wait for lines for good
            }
        }
        root.addHandler(new AsyncLogHandler(System.err, new SimpleFormatter(), level));
        root.setLevel(level);
        Logger.getLogger("io.mqvirtio").setLevel(level);
    }
}
