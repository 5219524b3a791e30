package dev.attache.probe;

import java.net.URI;
import java.time.Duration;

import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.http.urlconnection.UrlConnectionHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.sts.StsClient;
import software.amazon.awssdk.services.sts.model.GetCallerIdentityResponse;

/**
 * Resolves credentials exactly as an unmodified Java app does (the SDK's
 * {@link DefaultCredentialsProvider}, whose container credentials provider reads
 * AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE),
 * calls STS GetCallerIdentity at the endpoint in STS_ENDPOINT (region from
 * AWS_REGION) and prints one line of JSON:
 * {"Arn":"...","Account":"...","UserId":"..."}. Errors go to stderr with a non-zero exit.
 */
public final class Probe {
    private Probe() {}

    public static void main(String[] args) {
        try {
            System.out.println(run());
        } catch (Exception e) {
            System.err.println("java-sdk-probe: " + e);
            e.printStackTrace(System.err);
            System.exit(1);
        }
    }

    private static String run() {
        String endpoint = System.getenv("STS_ENDPOINT");
        if (endpoint == null || endpoint.isEmpty()) {
            throw new IllegalStateException("STS_ENDPOINT is not set");
        }
        String region = System.getenv("AWS_REGION");
        if (region == null || region.isEmpty()) {
            throw new IllegalStateException("AWS_REGION is not set");
        }
        try (DefaultCredentialsProvider credentials = DefaultCredentialsProvider.builder().build();
                StsClient sts = StsClient.builder()
                        .httpClientBuilder(UrlConnectionHttpClient.builder()
                                .connectionTimeout(Duration.ofSeconds(10))
                                .socketTimeout(Duration.ofSeconds(30)))
                        .credentialsProvider(credentials)
                        .region(Region.of(region))
                        .endpointOverride(URI.create(endpoint))
                        .build()) {
            GetCallerIdentityResponse out = sts.getCallerIdentity();
            return "{\"Arn\":" + quote(out.arn())
                    + ",\"Account\":" + quote(out.account())
                    + ",\"UserId\":" + quote(out.userId()) + "}";
        }
    }

    /** A JSON string literal (or null). */
    private static String quote(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
