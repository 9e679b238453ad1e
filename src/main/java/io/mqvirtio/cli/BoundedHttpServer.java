package io.mqvirtio.cli;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Function;
import java.util.regex.Pattern;

/**
 * The HTTP/1.1 server under the metrics endpoint: one request per connection, GET-sized requests only, every
 * connection bounded in time and memory, and (bound to loopback, the default) only requests that name a loopback
 * host served.
 *
 * <p>Why not {@code com.sun.net.httpserver}: it reads each request head with a blocking read on a thread of its
 * executor, with no deadline by default, so a few clients that send half a head and stall hold every thread and
 * starve everyone else (two did, with the endpoint's old pool of two). Its only bounds are system properties
 * ({@code sun.net.httpserver.maxReqTime}, {@code maxReqHeaderSize}, ...) that are read once per process, when the
 * first server of any user is made, and apply to every server in the process; and {@code maxReqTime} starts a
 * request's clock when the connection is handed to the executor's queue, so with a small pool it also closes the
 * well-formed requests that only waited for a thread (tried on JDK 25: the third client was reset, not answered).
 * This server gives each connection a virtual thread, so no client waits for another's reads, and bounds each one
 * itself (the constants below say why each bound exists).
 *
 * <p>The Host check (RFC 9110 section 7.2) is the defence against DNS rebinding: a web page on a name its author
 * controls can re-point that name at 127.0.0.1 and then read what this endpoint answers as if it came from its own
 * origin; the victim's browser sends {@code Host: that.name:PORT} with it. Only {@code localhost} and loopback IP
 * literals (which include the address the server is bound to, always a loopback one) are served, with any port or
 * none: neither can be re-pointed by someone else's DNS, browsers resolve {@code localhost} to loopback themselves
 * (RFC 6761 section 6.3), and a port other than ours is what a forwarded port (ssh -L) shows. Anything else gets 421
 * Misdirected Request (RFC 9110 section 15.5.20) and nothing from the handler. A server bound elsewhere (the
 * operator's explicit choice: {@code serve --metrics-remote}) is reached under names we cannot know, so it skips
 * the Host check and keeps every other bound.
 */
final class BoundedHttpServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(BoundedHttpServer.class.getName());

    /**
     * The whole request head must arrive within this time of the accept: total, not per read, since a client that
     * trickles a byte now and then would renew a per-read timeout forever. Prometheus, curl and {@code mqvirtio stats}
     * send their head in one segment, so this is only ever reached by a stalled or hostile client.
     */
    static final long HEAD_MILLIS = 3000;
    /**
     * The largest request head (request line and header fields) read; more is refused with 431 (RFC 6585 section 5)
     * or, for a request line alone that long, 414 (RFC 9110 section 15.5.15). The heads this endpoint gets are a few
     * hundred bytes; the bound is what a connection's buffer holds, so memory per connection is bounded too.
     */
    static final int MAX_HEAD_BYTES = 8 * 1024;
    /**
     * Connections served at once; further ones wait in the kernel's accept backlog until one ends. Each holds at most
     * a head buffer and a thread for at most {@link #CONNECTION_MILLIS}, so a flood of silent connections
     * costs bounded memory and delays a real client by at most {@link #HEAD_MILLIS}.
     */
    static final int MAX_CONNECTIONS = 32;
    /**
     * The longest a connection lives, head, answer and close together; then it is closed from outside. A socket has
     * no timeout for writes, so without this a client that sends a request and never reads the answer would keep
     * its thread blocked in the write for as long as it liked.
     */
    static final long CONNECTION_MILLIS = 10_000;
    /**
     * After the answer the server shuts down its sending side and reads (and drops) what the client still sends, up
     * to this time and {@link #LINGER_BYTES}, before it closes: the lingering close of RFC 9112 section 9.6. Closing
     * with unread input (a request body, a too-long head) makes the kernel reset the connection, and a reset can
     * destroy the answer before the client read it.
     */
    static final long LINGER_MILLIS = 1000;
    static final int LINGER_BYTES = 64 * 1024;

    /**
     * What the handler gets: the method, the decoded path, the raw query (null if none) and the header fields (names
     * in lower case, values in order; all of them fit in {@link #MAX_HEAD_BYTES}).
     */
    record Request(String method, String path, String query, Map<String, List<String>> headers) {
        List<String> header(String name) {
            return headers.getOrDefault(name.toLowerCase(Locale.ROOT), List.of());
        }
    }

    /** What the handler returns; {@code headers} are extra fields (e.g. Allow, Content-Encoding). */
    record Response(int status, String type, byte[] body, Map<String, String> headers) {
        Response(int status, String type, String body, Map<String, String> headers) {
            this(status, type, body.getBytes(StandardCharsets.UTF_8), headers);
        }

        static Response of(int status, String type, String body) {
            return new Response(status, type, body, Map.of());
        }

        static Response text(int status, String body) {
            return of(status, "text/plain; charset=utf-8", body);
        }
    }

    /** A request the server answers itself, with {@code status} and a one-line {@code body}, without the handler. */
    private static final class Refusal extends Exception {
        final int status;
        final String detail; // for the log only

        Refusal(int status, String body) {
            this(status, body, "");
        }

        Refusal(int status, String body, String detail) {
            super(body, null, false, false);
            this.status = status;
            this.detail = detail;
        }
    }

    private static final Pattern VERSION = Pattern.compile("HTTP/([0-9])\\.[0-9]");
    private static final Pattern IPV4 = Pattern.compile("[0-9]{1,3}(\\.[0-9]{1,3}){3}");
    private static final Pattern PORT = Pattern.compile("[0-9]{0,5}");
    /** IMF-fixdate, RFC 9110 section 5.6.7 (DateTimeFormatter.RFC_1123_DATE_TIME omits the day's leading zero). */
    private static final DateTimeFormatter DATE = DateTimeFormatter.ofPattern("EEE, dd MMM yyyy HH:mm:ss 'GMT'",
            Locale.ROOT);

    private final ServerSocket socket;
    private final boolean loopbackOnly;
    private final Function<Request, Response> handler;
    private final Semaphore slots = new Semaphore(MAX_CONNECTIONS);
    private final Set<Socket> open = ConcurrentHashMap.newKeySet();
    private final ScheduledExecutorService reaper;
    private final Thread acceptor;
    private final AtomicBoolean warnedHost = new AtomicBoolean();
    private volatile boolean closed;

    private BoundedHttpServer(ServerSocket socket, Function<Request, Response> handler) {
        this.socket = socket;
        this.loopbackOnly = socket.getInetAddress().isLoopbackAddress();
        this.handler = handler;
        ScheduledThreadPoolExecutor r = new ScheduledThreadPoolExecutor(1,
                t -> Thread.ofPlatform().name("mqvirtio-metrics-reaper").daemon(true).unstarted(t));
        r.setRemoveOnCancelPolicy(true); // a connection that ends in time leaves nothing queued
        this.reaper = r;
        this.acceptor = Thread.ofPlatform().name("mqvirtio-metrics").daemon(true).unstarted(this::acceptLoop);
    }

    /**
     * Binds {@code at} and serves {@code handler} until {@link #close}; on a loopback address, only to requests that
     * name a loopback host.
     */
    static BoundedHttpServer start(InetSocketAddress at, Function<Request, Response> handler) throws IOException {
        ServerSocket s = new ServerSocket();
        try {
            s.bind(at, 16);
        } catch (IOException | RuntimeException e) {
            s.close();
            throw e;
        }
        BoundedHttpServer h = new BoundedHttpServer(s, handler);
        h.acceptor.start();
        return h;
    }

    InetSocketAddress address() {
        return (InetSocketAddress) socket.getLocalSocketAddress();
    }

    private void acceptLoop() {
        io.mqvirtio.vhostuser.FailureRun failures = new io.mqvirtio.vhostuser.FailureRun();
        while (!closed) {
            Socket c;
            try {
                slots.acquire();
            } catch (InterruptedException e) {
                return;
            }
            try {
                c = socket.accept();
                long run = failures.succeeded();
                if (run > 0) {
                    LOG.log(Level.INFO, "metrics endpoint: accepting again after {0} failures", run);
                }
            } catch (IOException e) {
                slots.release();
                if (closed) {
                    return;
                }
                // e.g. out of file descriptors: the endpoint lives on, and a pause keeps this from spinning; the
                // lines as the vhost-user sockets log theirs
                if (failures.failed()) {
                    LOG.log(Level.WARNING, "metrics endpoint: accept failed ({0} in a row): {1}", failures.count(),
                            e.toString());
                }
                try {
                    Thread.sleep(100);
                } catch (InterruptedException stop) {
                    return;
                }
                continue;
            }
            open.add(c);
            if (closed) { // close() may have swept the open set before this one joined it
                drop(c, null);
                return;
            }
            ScheduledFuture<?> deadline;
            try {
                deadline = reaper.schedule(() -> quietClose(c), CONNECTION_MILLIS, TimeUnit.MILLISECONDS);
            } catch (RejectedExecutionException e) { // close() came in between
                drop(c, null);
                return;
            }
            // A platform thread, not a virtual one: a virtual thread's first blocking socket read sets up the JDK's
            // poller (an epoll fd), and if the process is out of descriptors at that moment the poller's class fails
            // to initialize, for good: no virtual thread could read a socket again, and the endpoint was dead until
            // serve restarted. At most MAX_CONNECTIONS of these live at once.
            try {
                Thread.ofPlatform().name("mqvirtio-metrics-conn").daemon(true).start(() -> {
                    try {
                        serve(c);
                    } finally {
                        drop(c, deadline);
                    }
                });
            } catch (OutOfMemoryError e) { // no thread to be had (a thread limit): this client is not served
                LOG.log(Level.WARNING, "metrics endpoint: no thread for a connection: {0}", e.toString());
                drop(c, deadline);
            }
        }
    }

    private void drop(Socket c, ScheduledFuture<?> deadline) {
        if (deadline != null) {
            deadline.cancel(false);
        }
        quietClose(c);
        open.remove(c);
        slots.release();
    }

    /** One connection: read a bounded head in bounded time, answer it, close (lingering). */
    private void serve(Socket c) {
        try {
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(HEAD_MILLIS);
            Response r;
            boolean head = false;
            try {
                String text = readHead(c, deadline);
                if (text == null) {
                    return; // closed before a whole head: nobody to answer
                }
                head = text.replaceFirst("^[\r\n]+", "").startsWith("HEAD "); // no body, even refused
                r = answer(parse(text, loopbackOnly));
            } catch (Refusal e) {
                // the first refused Host at WARNING, so that a client set up with another name shows up in the log;
                // the rest at DEBUG, so that a rebinding page cannot flood it
                Level l = e.status == 421 && warnedHost.compareAndSet(false, true) ? Level.WARNING : Level.DEBUG;
                LOG.log(l, "metrics endpoint: refused a request from {0}: {1} {2}{3}", c.getRemoteSocketAddress(),
                        e.status, e.getMessage(), e.detail);
                r = Response.text(e.status, e.getMessage() + "\n");
            }
            OutputStream o = c.getOutputStream();
            o.write(render(r, head));
            o.flush();
            linger(c);
        } catch (IOException e) {
            // the client went away or was cut off by its deadline: nothing left to tell it
            LOG.log(Level.DEBUG, "metrics endpoint: connection from {0} ended: {1}", c.getRemoteSocketAddress(),
                    e.toString());
        }
    }

    private Response answer(Request q) {
        try {
            return handler.apply(q);
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "metrics request failed: {0}", e.toString());
            return Response.text(500, "internal error\n");
        }
    }

    /**
     * Reads up to the blank line that ends the head (CRLF or, as RFC 9112 section 2.2 allows, bare LF line ends);
     * empty lines before the request line are skipped, as that section asks. Returns the head's text, or null if the
     * client closed first.
     */
    private static String readHead(Socket c, long deadline) throws IOException, Refusal {
        byte[] buf = new byte[MAX_HEAD_BYTES];
        InputStream in = c.getInputStream();
        int n = 0;
        int scanned = 0;
        int lineStart = 0;
        boolean sawLine = false;
        while (true) {
            for (; scanned < n; scanned++) {
                if (buf[scanned] != '\n') {
                    continue;
                }
                int len = scanned - lineStart;
                if (len > 0 && buf[scanned - 1] == '\r') {
                    len--;
                }
                lineStart = scanned + 1;
                if (len > 0) {
                    sawLine = true;
                } else if (sawLine) {
                    return new String(buf, 0, scanned + 1, StandardCharsets.ISO_8859_1);
                }
            }
            if (n == buf.length) {
                throw sawLine
                        ? new Refusal(431, "request header fields too large (at most " + MAX_HEAD_BYTES + " bytes)")
                        : new Refusal(414, "request line too long (at most " + MAX_HEAD_BYTES + " bytes)");
            }
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (left <= 0) {
                throw new Refusal(408, "request head not received within " + HEAD_MILLIS + " ms");
            }
            c.setSoTimeout((int) left);
            int r;
            try {
                r = in.read(buf, n, buf.length - n);
            } catch (SocketTimeoutException e) {
                throw new Refusal(408, "request head not received within " + HEAD_MILLIS + " ms");
            }
            if (r < 0) {
                return null;
            }
            n += r;
        }
    }

    /** The request line, the Host (checked) and the other fields; a body is never read as a request. */
    private static Request parse(String head, boolean loopbackOnly) throws Refusal {
        List<String> lines = new ArrayList<>();
        for (String l : head.split("\n", -1)) {
            String line = l.endsWith("\r") ? l.substring(0, l.length() - 1) : l;
            if (line.indexOf('\r') >= 0) {
                throw new Refusal(400, "bad request: bare CR"); // RFC 9112 section 2.2
            }
            if (!line.isEmpty() || !lines.isEmpty()) {
                lines.add(line);
            }
        }
        String[] start = lines.getFirst().split(" ", -1);
        if (start.length != 3 || start[0].isEmpty() || start[1].isEmpty()) {
            throw new Refusal(400, "bad request line");
        }
        var version = VERSION.matcher(start[2]);
        if (!version.matches()) {
            throw new Refusal(400, "bad request line");
        }
        if (!version.group(1).equals("1")) {
            throw new Refusal(505, "only HTTP/1.x");
        }
        boolean http10 = start[2].equals("HTTP/1.0");
        List<String> hosts = new ArrayList<>(1);
        Map<String, List<String>> fields = new LinkedHashMap<>();
        for (String line : lines.subList(1, lines.size())) {
            if (line.isEmpty()) {
                break;
            }
            int colon = line.indexOf(':');
            // RFC 9112 section 5.1 (no whitespace before the colon) and 5.2 (a line folded with SP or HTAB)
            if (colon <= 0 || line.charAt(0) == ' ' || line.charAt(0) == '\t'
                    || line.substring(0, colon).indexOf(' ') >= 0 || line.substring(0, colon).indexOf('\t') >= 0) {
                throw new Refusal(400, "bad header field");
            }
            String value = trimOws(line.substring(colon + 1));
            if (line.substring(0, colon).equalsIgnoreCase("host")) {
                hosts.add(value);
            }
            fields.computeIfAbsent(line.substring(0, colon).toLowerCase(Locale.ROOT), k -> new ArrayList<>()).add(value);
        }
        URI target;
        try {
            target = new URI(start[1]);
        } catch (URISyntaxException e) {
            throw new Refusal(400, "bad request target");
        }
        String authority;
        String path;
        if (start[1].startsWith("/")) {
            authority = null;
            path = target.getPath();
        } else if (target.isAbsolute() && "http".equalsIgnoreCase(target.getScheme()) && target.getRawAuthority() != null
                && target.getRawUserInfo() == null) {
            // absolute form (RFC 9112 section 3.2.2): its authority, not the Host field, names the host
            authority = target.getRawAuthority();
            path = target.getPath().isEmpty() ? "/" : target.getPath();
        } else {
            throw new Refusal(400, "bad request target");
        }
        // RFC 9112 section 3.2: HTTP/1.1 needs exactly one Host; HTTP/1.0 had none, and no browser omits it, so a
        // request without one cannot be a rebinding page's
        if (hosts.size() > 1) {
            throw new Refusal(400, "more than one Host");
        }
        String host = authority != null ? authority : hosts.isEmpty() ? null : hosts.getFirst();
        if (host == null && !http10) {
            throw new Refusal(400, "no Host");
        }
        if (host != null && host.isEmpty()) {
            throw new Refusal(400, "empty Host");
        }
        if (loopbackOnly && host != null && !loopbackHost(host)) {
            throw new Refusal(421, "misdirected request: this endpoint answers only to a loopback Host",
                    " (Host: " + printable(host) + ")");
        }
        return new Request(start[0], path, target.getRawQuery(), fields);
    }

    /**
     * Whether {@code hostPort} (a Host value: host, optionally {@code :port}) is {@code localhost} or a loopback IP
     * literal (dotted IPv4 in 127.0.0.0/8, bracketed IPv6 ::1 in any spelling). Only literals are parsed, never
     * resolved: resolving a name is what a rebinding attacker controls.
     */
    static boolean loopbackHost(String hostPort) {
        String host;
        String port;
        boolean bracketed = hostPort.startsWith("[");
        if (bracketed) {
            int close = hostPort.indexOf(']');
            if (close < 0) {
                return false;
            }
            host = hostPort.substring(1, close);
            String rest = hostPort.substring(close + 1);
            if (!rest.isEmpty() && !rest.startsWith(":")) {
                return false;
            }
            port = rest.isEmpty() ? "" : rest.substring(1);
        } else {
            int colon = hostPort.indexOf(':');
            host = colon < 0 ? hostPort : hostPort.substring(0, colon);
            port = colon < 0 ? "" : hostPort.substring(colon + 1);
        }
        if (!PORT.matcher(port).matches()) {
            return false;
        }
        if (bracketed) {
            return host.indexOf(':') >= 0 && host.indexOf('%') < 0 && loopbackLiteral(host);
        }
        return host.equalsIgnoreCase("localhost") || IPV4.matcher(host).matches() && loopbackLiteral(host);
    }

    private static boolean loopbackLiteral(String literal) {
        try {
            return InetAddress.ofLiteral(literal).isLoopbackAddress(); // a literal only: never a lookup
        } catch (IllegalArgumentException e) {
            return false;
        }
    }

    /** A client's text as the log may show it: printable ASCII only, at most 100 characters. */
    private static String printable(String v) {
        StringBuilder b = new StringBuilder(Math.min(v.length(), 100));
        for (int i = 0; i < v.length() && i < 100; i++) {
            char ch = v.charAt(i);
            b.append(ch >= 0x20 && ch < 0x7f ? ch : '?');
        }
        return v.length() > 100 ? b.append("...").toString() : b.toString();
    }

    /** Strips optional whitespace (SP, HTAB) around a field value, RFC 9110 section 5.5. */
    private static String trimOws(String v) {
        int a = 0;
        int b = v.length();
        while (a < b && (v.charAt(a) == ' ' || v.charAt(a) == '\t')) {
            a++;
        }
        while (b > a && (v.charAt(b - 1) == ' ' || v.charAt(b - 1) == '\t')) {
            b--;
        }
        return v.substring(a, b);
    }

    static byte[] render(Response r, boolean head) {
        byte[] body = r.body();
        Map<String, String> h = new LinkedHashMap<>();
        h.put("Date", DATE.format(ZonedDateTime.now(ZoneOffset.UTC)));
        h.put("Content-Type", r.type());
        h.put("Content-Length", Integer.toString(body.length)); // for HEAD too: what GET would send (RFC 9110 9.3.2)
        h.put("Cache-Control", "no-store");
        h.put("X-Content-Type-Options", "nosniff"); // a 404 echoes the path a client asked for: text, never HTML
        h.put("Connection", "close"); // one request per connection keeps its whole life under the bounds above
        h.putAll(r.headers());
        StringBuilder b = new StringBuilder(256).append("HTTP/1.1 ").append(r.status()).append(' ')
                .append(reason(r.status())).append("\r\n");
        h.forEach((k, v) -> b.append(k).append(": ").append(v).append("\r\n"));
        byte[] top = b.append("\r\n").toString().getBytes(StandardCharsets.ISO_8859_1);
        if (head) {
            return top;
        }
        byte[] all = new byte[top.length + body.length];
        System.arraycopy(top, 0, all, 0, top.length);
        System.arraycopy(body, 0, all, top.length, body.length);
        return all;
    }

    private static String reason(int status) {
        return switch (status) {
            case 200 -> "OK";
            case 400 -> "Bad Request";
            case 404 -> "Not Found";
            case 405 -> "Method Not Allowed";
            case 408 -> "Request Timeout";
            case 414 -> "URI Too Long";
            case 421 -> "Misdirected Request";
            case 431 -> "Request Header Fields Too Large";
            case 500 -> "Internal Server Error";
            case 505 -> "HTTP Version Not Supported";
            default -> "Status";
        };
    }

    /** The lingering close (see {@link #LINGER_MILLIS}). */
    private static void linger(Socket c) throws IOException {
        c.shutdownOutput();
        long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(LINGER_MILLIS);
        byte[] sink = new byte[4096];
        InputStream in = c.getInputStream();
        for (int dropped = 0; dropped < LINGER_BYTES; ) {
            long left = TimeUnit.NANOSECONDS.toMillis(end - System.nanoTime());
            if (left <= 0) {
                return;
            }
            c.setSoTimeout((int) left);
            int r;
            try {
                r = in.read(sink);
            } catch (SocketTimeoutException e) {
                return;
            }
            if (r < 0) {
                return;
            }
            dropped += r;
        }
    }

    private static void quietClose(Socket c) {
        try {
            c.close();
        } catch (IOException e) {
            // closing is all that was asked
        }
    }

    /** Stops accepting and closes every connection; returns without waiting for their threads. */
    @Override
    public void close() {
        closed = true;
        try {
            socket.close();
        } catch (IOException e) {
            // the listening socket is gone either way
        }
        acceptor.interrupt(); // when it waits for a free slot rather than in accept
        for (Socket c : open) {
            quietClose(c);
        }
        reaper.shutdownNow();
    }
}
