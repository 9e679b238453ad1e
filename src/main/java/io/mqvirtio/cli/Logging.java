package io.mqvirtio.cli;

import java.util.logging.ConsoleHandler;
import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.logging.SimpleFormatter;

/** One line per log record on stderr: time, level, source, message. */
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
        }
        ConsoleHandler h = new ConsoleHandler();
        h.setFormatter(new SimpleFormatter());
        h.setLevel(level);
        root.addHandler(h);
        root.setLevel(level);
        Logger.getLogger("io.mqvirtio").setLevel(level);
    }
}
