package io.mqvirtio.cli;

import io.mqvirtio.cli.BoundedHttpServer.Request;
import io.mqvirtio.cli.BoundedHttpServer.Response;
import io.mqvirtio.net.NetDevice;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.UnknownHostException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.BooleanSupplier;
import io.prometheus.metrics.config.PrometheusProperties;
import io.prometheus.metrics.exporter.common.PrometheusHttpExchange;
import io.prometheus.metrics.exporter.common.PrometheusHttpRequest;
import io.prometheus.metrics.exporter.common.PrometheusHttpResponse;
import io.prometheus.metrics.exporter.common.PrometheusScrapeHandler;
import io.prometheus.metrics.instrumentation.jvm.JvmMetrics;
import io.prometheus.metrics.model.registry.PrometheusRegistry;

/**
 * The metrics endpoint of {@code mqvirtio serve --metrics ADDR:PORT}: per-queue counters of the served devices,
 * readable from outside the process while it runs. {@code GET /metrics} is the Prometheus Java client's scrape
 * handler over a registry of our series ({@link DeviceCollector}: one consistent snapshot of every device per scrape)
 * and the JVM's own (memory, GC, threads, ...): the format is negotiated as the client library does it (text format
 * 0.0.4 by default, OpenMetrics or protobuf when the scraper asks), with its {@code name[]} filters and gzip.
 * {@code GET /stats} answers in JSON (what {@code mqvirtio stats} reads). It binds to loopback addresses unless told
 * otherwise ({@code --metrics-remote}): the counters say what a VM does, and the endpoint has no authentication. On
 * loopback it answers only requests whose Host names loopback (against DNS rebinding); every connection is bounded
 * in time and size ({@link BoundedHttpServer} says how and why the JDK's HTTP server, under the client's own HTTP
 * exporter, is not used).
 */
public final class MetricsServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(MetricsServer.class.getName());

    /** One served device as the endpoint sees it. */
    public record Source(NetDevice device, String socket, String backend, BooleanSupplier connected) {
        DeviceStats snapshot() {
            return DeviceStats.of(device, socket, backend, connected.getAsBoolean());
        }
    }


    private final List<Source> sources;
    private final long started = System.nanoTime();
    private final PrometheusScrapeHandler scrape;
    private final BoundedHttpServer http;

    private MetricsServer(InetSocketAddress at, List<Source> sources) throws IOException {
        this.sources = List.copyOf(sources);
        PrometheusRegistry registry = new PrometheusRegistry();
        registry.register(new DeviceCollector(this::snapshots));
        JvmMetrics.builder().register(registry);
        this.scrape = new PrometheusScrapeHandler(PrometheusProperties.get(), registry);
        this.http = BoundedHttpServer.start(at, this::handle); // serves from other threads, started after the above
    }

    /**
     * Parses {@code ADDR:PORT} ({@code 127.0.0.1:9100}, {@code [::1]:9100}, {@code localhost:9100}; port 0 picks a
     * free one) and insists on a loopback address.
     */
    static InetSocketAddress loopback(String option, String spec) {
        InetSocketAddress a = address(option, spec);
        if (!a.getAddress().isLoopbackAddress()) {
            throw new UsageException("--" + option + ": " + a.getAddress().getHostAddress()
                    + " is not a loopback address; the metrics endpoint has no authentication and serves only on "
                    + "loopback (127.0.0.0/8, ::1, localhost)");
        }
        return a;
    }

    /** Parses and resolves {@code ADDR:PORT}; IPv6 literals in brackets. */
    static InetSocketAddress address(String option, String spec) {
        String host;
        String port;
        if (spec.startsWith("[")) {
            int close = spec.indexOf(']');
            if (close < 0 || close + 1 >= spec.length() || spec.charAt(close + 1) != ':') {
                throw new UsageException("--" + option + " needs ADDR:PORT ([IPv6]:PORT), got '" + spec + "'");
            }
            host = spec.substring(1, close);
            port = spec.substring(close + 2);
        } else {
            int colon = spec.lastIndexOf(':');
            if (colon <= 0 || spec.indexOf(':') != colon) {
                throw new UsageException("--" + option + " needs ADDR:PORT (IPv6 in brackets: [::1]:9100), got '"
                        + spec + "'");
            }
            host = spec.substring(0, colon);
            port = spec.substring(colon + 1);
        }
        int p;
        try {
            p = Integer.parseInt(port);
        } catch (NumberFormatException e) {
            throw new UsageException("--" + option + ": the port must be a number, got '" + port + "'");
        }
        if (p < 0 || p > 65535) {
            throw new UsageException("--" + option + ": the port must be in 0..65535, got " + p);
        }
        try {
            return new InetSocketAddress(InetAddress.getByName(host), p);
        } catch (UnknownHostException e) {
            throw new UsageException("--" + option + ": unknown host '" + host + "'");
        }
    }

    /**
     * Serves {@code sources} on {@code at}: a loopback address (see {@link #loopback}), or with {@code remote} any
     * address the operator chose.
     */
    public static MetricsServer start(InetSocketAddress at, List<Source> sources, boolean remote) throws IOException {
        if (!remote && !at.getAddress().isLoopbackAddress()) {
            throw new IllegalArgumentException("the metrics endpoint serves only on loopback, not " + at);
        }
        MetricsServer m = new MetricsServer(at, sources);
        LOG.log(remote && !at.getAddress().isLoopbackAddress() ? Level.WARNING : Level.INFO,
                "metrics on http://{0}/metrics (Prometheus) and /stats (JSON){1}", hostPort(m.address()),
                at.getAddress().isLoopbackAddress() ? "" : ", reachable from other hosts, without authentication");
        return m;
    }

    /** Serves {@code sources} on a loopback address. */
    public static MetricsServer start(InetSocketAddress at, List<Source> sources) throws IOException {
        return start(at, sources, false);
    }

    /** The bound address (with the port the kernel chose for port 0). */
    public InetSocketAddress address() {
        return http.address();
    }

    static String hostPort(InetSocketAddress a) {
        String h = a.getAddress().getHostAddress();
        return (h.contains(":") ? "[" + h + "]" : h) + ":" + a.getPort();
    }

    private Response handle(Request q) {
        if (!q.method().equals("GET") && !q.method().equals("HEAD")) {
            return new Response(405, "text/plain; charset=utf-8", "only GET and HEAD\n", Map.of("Allow", "GET, HEAD"));
        }
        return switch (q.path()) {
            // HEAD as GET, whose body the server leaves out: the client library's handler answers a HEAD with no
            // body and Content-Length 0, which RFC 9110 section 8.6 forbids (it must be what GET would send)
            case "/metrics" -> scrape(q.method().equals("HEAD") ? new Request("GET", q.path(), q.query(), q.headers()) : q);
            case "/stats" -> Response.of(200, "application/json", json(snapshots(), uptimeMillis()) + "\n");
            case "/" -> Response.text(200, "mqvirtio metrics: /metrics (Prometheus text format), /stats (JSON)\n");
            default -> Response.text(404, "not found: " + q.path() + "\n");
        };
    }

    List<DeviceStats> snapshots() {
        List<DeviceStats> l = new ArrayList<>(sources.size());
        for (Source s : sources) {
            l.add(s.snapshot());
        }
        return l;
    }

    long uptimeMillis() {
        return (System.nanoTime() - started) / 1_000_000;
    }

    /** The JSON of {@code /stats}: {"uptime_ms", "time_ms", "devices": [...]}. */
    static String json(List<DeviceStats> devices, long uptimeMillis) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("uptime_ms", uptimeMillis);
        m.put("time_ms", System.currentTimeMillis());
        List<Object> d = new ArrayList<>();
        for (DeviceStats s : devices) {
            d.add(s.toJson());
        }
        m.put("devices", d);
        return Json.write(m);
    }

    /** /metrics: the client library's scrape handler, answering through {@link ScrapeExchange}. */
    private Response scrape(Request q) {
        ScrapeExchange x = new ScrapeExchange(q);
        try {
            scrape.handleRequest(x);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e); // the server answers 500
        }
        return x.response();
    }

    /** One scrape as the client library's handler sees it: our request in, its status, fields and body out. */
    private static final class ScrapeExchange implements PrometheusHttpExchange {
        private final Request q;
        private final Map<String, String> fields = new LinkedHashMap<>();
        private final java.io.ByteArrayOutputStream body = new java.io.ByteArrayOutputStream();
        private int status = 500;

        ScrapeExchange(Request q) {
            this.q = q;
        }

        @Override
        public PrometheusHttpRequest getRequest() {
            return new PrometheusHttpRequest() {
                @Override
                public String getQueryString() {
                    return q.query();
                }

                @Override
                public java.util.Enumeration<String> getHeaders(String name) {
                    return java.util.Collections.enumeration(q.header(name));
                }

                @Override
                public String getMethod() {
                    return q.method();
                }

                @Override
                public String getRequestPath() {
                    return q.path();
                }
            };
        }

        @Override
        public PrometheusHttpResponse getResponse() {
            return new PrometheusHttpResponse() {
                @Override
                public void setHeader(String name, String value) {
                    fields.put(name, value);
                }

                @Override
                public java.io.OutputStream sendHeadersAndGetBody(int statusCode, int contentLength) {
                    status = statusCode;
                    return body;
                }
            };
        }

        @Override
        public void handleException(IOException e) throws IOException {
            throw e;
        }

        @Override
        public void handleException(RuntimeException e) {
            throw e;
        }

        @Override
        public void close() {}

        Response response() {
            String type = fields.remove("Content-Type");
            fields.remove("Content-Length"); // the server counts the body itself
            return new Response(status, type == null ? "text/plain; charset=utf-8" : type, body.toByteArray(),
                    Map.copyOf(fields));
        }
    }

    @Override
    public void close() {
        http.close();
    }
}
