package io.mqvirtio.peers;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A QEMU monitor (QMP) on a UNIX socket, for tests: commands out as JSON lines, each answered by the next line that
 * is a "return" or an "error" (asynchronous events in between are skipped). Every wait is bounded: a reader
 * thread queues the lines.
 */
public final class Qmp implements AutoCloseable {
    private static final String CLOSED = "\u0000closed";
    private final SocketChannel channel;
    private final BlockingQueue<String> lines = new LinkedBlockingQueue<>();

    private Qmp(SocketChannel channel) {
        this.channel = channel;
        BufferedReader in = new BufferedReader(new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8));
        Thread.ofPlatform().daemon().name("qmp-reader").start(() -> {
            try {
                for (String l; (l = in.readLine()) != null; ) {
                    lines.add(l);
                }
            } catch (IOException ignored) {
                // closed
            }
            lines.add(CLOSED);
        });
    }

    /** Connects once QEMU created the socket (within {@code timeoutMs}) and leaves capabilities negotiation. */
    public static Qmp connect(Path sock, Process qemu, long timeoutMs) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (true) {
            if (Files.exists(sock)) {
                try {
                    SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
                    ch.connect(UnixDomainSocketAddress.of(sock));
                    Qmp q = new Qmp(ch);
                    q.readLine(timeoutMs); // the greeting
                    q.execute("{\"execute\":\"qmp_capabilities\"}", timeoutMs);
                    return q;
                } catch (IOException notYet) {
                    // the socket exists but QEMU does not listen yet
                }
            }
            if (!qemu.isAlive() || System.nanoTime() > deadline) {
                throw new IllegalStateException("no QMP monitor on " + sock + (qemu.isAlive() ? "" : ": QEMU exited"));
            }
            Thread.sleep(50);
        }
    }

    /** Sends one command; returns its answer line ("return" or "error"). */
    public String execute(String json, long timeoutMs) throws IOException {
        channel.write(ByteBuffer.wrap((json + "\n").getBytes(StandardCharsets.UTF_8)));
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (true) {
            String line = readLine(TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()));
            if (line.contains("\"return\"") || line.contains("\"error\"")) {
                return line;
            }
        }
    }

    private String readLine(long timeoutMs) throws IOException {
        String line;
        try {
            line = lines.poll(Math.max(timeoutMs, 1), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted");
        }
        if (line == null) {
            throw new IOException("QMP: no answer within " + timeoutMs + " ms");
        }
        if (line.equals(CLOSED)) {
            lines.add(CLOSED);
            throw new IOException("QMP: QEMU closed its monitor");
        }
        return line;
    }

    @Override
    public void close() {
        try {
            channel.close();
        } catch (IOException ignored) {
            // closing a closed monitor
        }
    }
}
