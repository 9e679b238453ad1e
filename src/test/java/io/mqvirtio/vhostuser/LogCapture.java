package io.mqvirtio.vhostuser;

import java.util.ArrayList;
import java.util.List;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

/**
 * Collects what the vhost-user package logs at WARNING and above (System.Logger goes to java.util.logging here),
 * with the message's parameters filled in; or what another logger's tree logs at another level and above.
 */
public final class LogCapture extends Handler implements AutoCloseable {
    private static final String PACKAGE = "io.mqvirtio.vhostuser";
    private final Logger logger;
    private final Level min;
    private final Level loggerLevel;
    private final List<String> lines = new ArrayList<>();

    public LogCapture() {
        this(PACKAGE, Level.WARNING);
    }

    public LogCapture(String loggerName, Level min) {
        this.logger = Logger.getLogger(loggerName);
        this.min = min;
        setLevel(min);
        // A command run in this JVM before (Main.run) may have set the tree's level higher (Logging.quiet):
        // records below it would never reach this handler.
        this.loggerLevel = logger.getLevel();
        if (loggerLevel != null && loggerLevel.intValue() > min.intValue()) {
            logger.setLevel(min);
        }
        logger.addHandler(this);
    }

    @Override
    public synchronized void publish(LogRecord r) {
        if (r.getLevel().intValue() < min.intValue()) {
            return;
        }
        String m = r.getMessage();
        Object[] p = r.getParameters();
        if (p != null) {
            m = java.text.MessageFormat.format(m, p);
        }
        lines.add(r.getLevel() + " " + m);
    }

    /** Keeps the package's records off the console while this capture is open (for tests that log thousands). */
    public LogCapture quiet() {
        logger.setUseParentHandlers(false);
        return this;
    }

    public synchronized List<String> lines() {
        return List.copyOf(lines);
    }

    public synchronized void clear() {
        lines.clear();
    }

    @Override
    public void flush() {}

    @Override
    public void close() {
        logger.removeHandler(this);
        logger.setUseParentHandlers(true);
        logger.setLevel(loggerLevel);
    }
}
