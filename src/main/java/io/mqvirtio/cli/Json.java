package io.mqvirtio.cli;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.jr.ob.JSON;
import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * JSON for the metrics endpoint's {@code /stats}, {@code mqvirtio stats} and the bench's {@code bench.json}, through
 * jackson-jr: maps, lists, strings, numbers and booleans out (a NaN or infinite number is written as null: JSON has
 * neither); strict parsing in (objects become maps in document order, arrays lists, whole numbers Integer or Long;
 * duplicate keys, trailing content and nesting deeper than {@value #MAX_DEPTH} are refused). Malformed input is an
 * {@link IllegalArgumentException} saying where.
 */
final class Json {
    /** Deeper documents are refused: nothing we exchange nests more than a few levels. */
    static final int MAX_DEPTH = 64;
    /** The longest document parsed: /stats of 256 VMs with 256 pairs each is far below. */
    static final int MAX_CHARS = 64 << 20;

    private static final JsonFactory FACTORY = JsonFactory.builder()
            .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(MAX_DEPTH).maxDocumentLength(MAX_CHARS)
                    .build())
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION).build();
    private static final JSON COMPACT = JSON.builder(FACTORY)
            .enable(JSON.Feature.PRESERVE_FIELD_ORDERING, JSON.Feature.FAIL_ON_DUPLICATE_MAP_KEYS,
                    JSON.Feature.WRITE_NULL_PROPERTIES)
            .build();

    private Json() {}

    /** One line. */
    static String write(Object v) {
        try {
            return COMPACT.asString(finite(v));
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot write JSON: " + e.getMessage(), e);
        }
    }

    static Object parse(String text) {
        try (JsonParser p = FACTORY.createParser(text)) {
            Object v = COMPACT.anyFrom(p);
            if (p.nextToken() != null) {
                throw new IllegalArgumentException("trailing content at " + p.currentLocation().offsetDescription());
            }
            return v;
        } catch (IOException | RuntimeException e) {
            String m = e.getMessage() == null ? e.toString() : e.getMessage();
            // Jackson's message, its location included, on one line
            throw new IllegalArgumentException("malformed JSON: " + m.replaceAll("\\s*\\R\\s*", " "), e);
        }
    }

    /** {@code v} with every NaN and infinity (nowhere allowed in JSON) replaced by null. */
    private static Object finite(Object v) {
        return switch (v) {
            case Double d when d.isNaN() || d.isInfinite() -> null;
            case Float f when f.isNaN() || f.isInfinite() -> null;
            case Map<?, ?> m -> {
                Map<String, Object> c = new LinkedHashMap<>();
                m.forEach((k, x) -> c.put(String.valueOf(k), finite(x)));
                yield c;
            }
            case List<?> l -> {
                List<Object> c = new ArrayList<>(l.size());
                l.forEach(x -> c.add(finite(x)));
                yield c;
            }
            case null, default -> v;
        };
    }
}
