package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Formatter;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Logging never waits for standard error: with a stream that takes nothing (a pipe nobody reads, a journal that
 * stalls), publishing returns at once, what does not fit the queue is left out and counted, and once the stream
 * takes lines again the count comes first, then the queued lines in order.
 */
class AsyncLogHandlerTest {
    static final Formatter PLAIN = new Formatter() {
        @Override
        public String format(LogRecord r) {
            return r.getMessage() + "\n";
        }
    };

    /** A stream whose writes wait until it is opened; what it was given after that. */
    static final class GatedStream extends OutputStream {
        final CountDownLatch open = new CountDownLatch(1);
        final ByteArrayOutputStream got = new ByteArrayOutputStream();

        @Override
        public void write(int b) {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public void write(byte[] b, int off, int len) {
            try {
                open.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            synchronized (got) {
                got.write(b, off, len);
            }
        }

        List<String> lines() {
            synchronized (got) {
                return got.toString(StandardCharsets.UTF_8).lines().toList();
            }
        }
    }

    @Test
    @Timeout(30)
    void aStreamThatTakesNothingNeverHoldsTheThreadsThatLog() throws Exception {
        GatedStream out = new GatedStream();
        AsyncLogHandler h = new AsyncLogHandler(out, PLAIN, Level.INFO);
        int n = 3 * AsyncLogHandler.QUEUE;
        long t0 = System.nanoTime();
        for (int i = 0; i < n; i++) {
            h.publish(new LogRecord(Level.INFO, "line " + i));
        }
        long took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        assertThat(took).as("ms to log %d lines with the stream blocked", n).isLessThan(5000);

        out.open.countDown();
        h.flush();
        List<String> lines = out.lines();
        // Counts of lines left out come before the next line written after them; what is written keeps the order
        // it was logged in (the writer may have started before or after the queue filled, so which lines got
        // through varies: the first ones, and maybe one that found the slot the writer had just emptied).
        String tail = " left out: standard error did not take them in time";
        long leftOut = 0;
        int last = -1;
        int written = 0;
        for (String l : lines) {
            if (l.endsWith(tail)) {
                leftOut += Long.parseLong(l.split(" ")[0]);
                continue;
            }
            int k = Integer.parseInt(l.substring("line ".length()));
            assertThat(k).as("line %d after line %d", k, last).isGreaterThan(last);
            last = k;
            written++;
        }
        assertThat(written + leftOut).as("written and left out").isEqualTo(n);
        assertThat(written).as("about the queue's worth").isBetween(AsyncLogHandler.QUEUE, AsyncLogHandler.QUEUE + 2);
        assertThat(lines.get(lines.size() - 1)).doesNotEndWith(tail);
        assertThat(h.leftOut()).isZero();
        h.retire();
    }

    @Test
    @Timeout(30)
    void flushWaitsForEveryLineAcceptedFromManyThreads() throws Exception {
        GatedStream out = new GatedStream();
        out.open.countDown();
        AsyncLogHandler h = new AsyncLogHandler(out, PLAIN, Level.INFO);
        Thread[] ts = new Thread[4];
        for (int t = 0; t < ts.length; t++) {
            int id = t;
            ts[t] = Thread.ofPlatform().start(() -> {
                for (int i = 0; i < 500; i++) {
                    h.publish(new LogRecord(Level.INFO, "t" + id + " " + i));
                }
            });
        }
        for (Thread t : ts) {
            t.join();
        }
        h.publish(new LogRecord(Level.FINE, "below the level"));
        h.flush();
        List<String> lines = out.lines();
        assertThat(lines).hasSize(2000).doesNotContain("below the level");
        for (int t = 0; t < ts.length; t++) {
            String p = "t" + t + " ";
            List<String> mine = lines.stream().filter(l -> l.startsWith(p)).toList();
            for (int i = 0; i < mine.size(); i++) {
                assertThat(mine.get(i)).isEqualTo(p + i); // each thread's lines in its order
            }
        }
        h.retire();
    }

    @Test
    @Timeout(30)
    void aRetiredHandlerWritesWhatItHadAndItsThreadEnds() throws Exception {
        GatedStream out = new GatedStream();
        out.open.countDown();
        long before = threads();
        AsyncLogHandler h = new AsyncLogHandler(out, PLAIN, Level.INFO);
        h.publish(new LogRecord(Level.INFO, "last words"));
        h.retire();
        assertThat(out.lines()).containsExactly("last words");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (threads() > before && System.nanoTime() < deadline) {
            Thread.sleep(10);
        }
        assertThat(threads()).as("writer threads left").isLessThanOrEqualTo(before);
    }

    private static long threads() {
        return Thread.getAllStackTraces().keySet().stream().filter(t -> t.getName().equals("mqvirtio-log")).count();
    }
}
