package io.mqvirtio.cli;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.ErrorManager;
import java.util.logging.Formatter;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;

/**
 * Log lines to a stream (standard error) through a bounded queue and a thread of their own, so that a thread that
 * logs never waits for the stream. A ConsoleHandler writes under one lock on the caller's thread: with standard error
 * a pipe nobody reads or a journal that stalls, every thread that logged waited there, a worker on its first port
 * error among them, its VM stopped, and after 10 s its device was declared dead. Here a line that finds the queue full
 * is left out and counted, and the count is written before the next line that gets through. {@link #flush} waits
 * for what is queued, a bounded time.
 */
final class AsyncLogHandler extends Handler {
    /** Lines waiting for the stream; more are left out (counted). */
    static final int QUEUE = 4096;
    /** How long {@link #flush} waits for the queue to be written. */
    static final long FLUSH_MILLIS = 2000;

    private final OutputStream out;
    private final ArrayBlockingQueue<String> queue = new ArrayBlockingQueue<>(QUEUE);
    private final AtomicLong accepted = new AtomicLong();
    private final AtomicLong leftOut = new AtomicLong();
    private volatile long written;
    private final Thread writer;

    AsyncLogHandler(OutputStream out, Formatter formatter, Level level) {
        this.out = out;
        setFormatter(formatter);
        setLevel(level);
        this.writer = Thread.ofPlatform().daemon().name("mqvirtio-log").start(this::drain);
    }

    @Override
    public void publish(LogRecord r) {
        if (!isLoggable(r)) {
            return;
        }
        String line;
        try {
            line = getFormatter().format(r);
        } catch (RuntimeException e) {
            reportError(null, e, ErrorManager.FORMAT_FAILURE);
            return;
        }
        if (queue.offer(line)) {
            accepted.incrementAndGet();
        } else {
            leftOut.incrementAndGet();
        }
    }

    private void drain() {
        long done = 0;
        while (true) {
            String line;
            try {
                line = queue.take();
            } catch (InterruptedException e) {
                return; // retired (another handler took over); otherwise a daemon thread ends with the JVM
            }
            long n = leftOut.getAndSet(0);
            if (n > 0) {
                LogRecord note = new LogRecord(Level.WARNING, n + " log line" + (n == 1 ? "" : "s")
                        + " left out: standard error did not take them in time");
                note.setLoggerName(AsyncLogHandler.class.getName());
                note.setSourceClassName(AsyncLogHandler.class.getName());
                write(getFormatter().format(note), false);
            }
            write(line, queue.isEmpty());
            written = ++done;
        }
    }

    private void write(String line, boolean flush) {
        try {
            out.write(line.getBytes(StandardCharsets.UTF_8));
            if (flush) {
                out.flush();
            }
        } catch (IOException | RuntimeException e) {
            reportError(null, e, ErrorManager.WRITE_FAILURE);
        }
    }

    /** Waits until the lines accepted so far are written, at most {@link #FLUSH_MILLIS}. */
    @Override
    public void flush() {
        long target = accepted.get();
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(FLUSH_MILLIS);
        while (written < target && System.nanoTime() < deadline) {
            try {
                Thread.sleep(1);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
        }
    }

    /** Flushes; the thread and the stream stay (lines logged while the JVM shuts down still go out). */
    @Override
    public void close() {
        flush();
    }

    /**
     * Flushes and ends the writing thread: for a handler another one replaces (a command run again in the same JVM
     * sets logging up anew). Lines published after this are not written.
     */
    void retire() {
        flush();
        writer.interrupt();
    }

    /** Lines left out and not reported yet. */
    long leftOut() {
        return leftOut.get();
    }
}
