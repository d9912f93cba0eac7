/* fz_creds.h - the harnesses' fixed credentials (PEM), so that every run, and the seeds
 * recorded from one (gen_seeds.c), present the same keys and certificates. Made once with
 * `openssl req -x509 -days 36500` (RSA-2048, two P-256), `openssl pkey -aes128 -passout
 * pass:secret` (FZ_EC_KEY_ENC) and `openssl genpkey -genparam -pkeyopt group:ffdhe2048`. */
#ifndef FZ_CREDS_H
#define FZ_CREDS_H

#define FZ_KEY_PASSWORD "secret"

static const char FZ_RSA_KEY[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCvTIIJVSOl8p8f\n"
    "S3GITIducCLlHHuTLT3jlQXK2NKr5qiNS7notb62ooI5FCkkPCMA3xAwp/C5Jr9j\n"
    "/PRYlvM4O2Eq5DXbqZVfLr2AinN8LX7wdwMdu3H0oizB1x5nO9GxyDDI1wovHgUN\n"
    "3gDBLqohxBrfkCF1TNws2QG+XH5de7V3nEFGiYez73gnNY4aSdMd27rpy5EvSL/h\n"
    "VO8TzNaMXSwmGa5iAae9zksnCLSfHW0E44ZNj/oiZYmeRgchw9Eouax05uGTiY3S\n"
    "hAt2pHYo7BYn/KmIXJpfo0oqmSXmkWyrmWMgtMITzYeUth+B7Yzah6WVKSoQbDGX\n"
    "IDlV8d4dAgMBAAECggEAGf01jTUobRa4pR7eBOdVr9ejsMSFhKcxNP+3xWBacX5n\n"
    "sFURCbGCRhj3RgeZZuQci2lGwPPxEj4uo2ASCN1OT2CsUfvWCUxN1zf6g+di4j7r\n"
    "gjKezWZoKWzuxklCmmsJtnoX03rgKWahuLHYekuVER7+HfWEJFwiC2sb4VFcsbah\n"
    "8I39G0QGPDgUpOF62Q+kwW5ZR3KqcOheVTwdlxMh0iaC8Wo7u6lOyYePoUlPATic\n"
    "vTTPEUuCp9C6pg3aaX0DvAlpZgtAHs9v2Hf1sHR50+DdYjf4az4oa7mtC+YnrRZC\n"
    "ISZ7isIQ91pNgO6l4gHojcqPI01EQeRfnfdUSmxXkQKBgQDbplKY1gHX5yQDYLkb\n"
    "tmRPRmeyAEKPvBM6abVkB0FErztF34CXrSmcil7ICWU9sedMad1irBncxCwBor1S\n"
    "AJtIRvov7X70ErLwmomMN/n5EwE3Hnht7S1RIHKA7CEutwyUd1XfWwCktObIseAP\n"
    "kmY4wQ9iCRtOkqCpf/Z/dFFZsQKBgQDMTzfQ/rmCkWEPvxX0hs6u29SvfLpCRRKk\n"
    "2eUDZK9uf3OI/nXOKunALi05VVNpr6dbdt4BKlC/nwr7hBZJjm/fH2/kWlWeUF0i\n"
    "ZSnHv8PSLCgHwwVQEOrAbUAPgSmL56oD7IDH8m0A0ZDPYvyql5DnfUc02vluCgo5\n"
    "uvX/vEM6LQKBgQC0nvzk+XbimAwhSvRtOXsbRYYX9ebGU55sNmkXLHAbjw1q0/Pm\n"
    "xlqlg5OVY0SBiz3stFF8xpEt3ZNidPTB7gXDVbp+lwoCoy3KdQoO6CkDDQG+1auq\n"
    "mZLeV5RRN9vBkn0hyVAwL6FD0A7Hkp3xsC2nFfsUXvC5mBHN0JBfFsOewQKBgH8X\n"
    "yGD6E+xlAzwIYl/6fBfKKEQCEtumnDJwWUYDHB5gqj5ODHpzt3UVRIylx323BySe\n"
    "jPuslw6coPhU8ohPUsg5hiFHEHurAkSjKZpYcDgNv9kUN/nWjDGnxHHgpzegpOJL\n"
    "/NBkveoEc1CPAx4bqshV5jW7Ae6x0CqZYu3y7t8BAoGAZYuUB9p1xnqbLON14ZIM\n"
    "Jb5nV+hBKBhBRVF7eU6zP5P3D7W0b1oExiwXNVTC0PtNMeTY/Q4L/csu3UXOWUyr\n"
    "8l5sg5T+oP1SNGq98sYGBloJnybBw0IwFicF7+AlhIbT1p24ZCyb+1Dy2ZnogqLj\n"
    "EUToa9ggIR9suB10P8oht7w=\n"
    "-----END PRIVATE KEY-----\n"
    ;

static const char FZ_RSA_CERT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIDJzCCAg+gAwIBAgIUIEdiOGgLlHFNqVmHRML02LCSnM8wDQYJKoZIhvcNAQEL\n"
    "BQAwFDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEzMDExNTQ0MFoYDzIxMjYx\n"
    "MTA2MTE1NDQwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwggEiMA0GCSqGSIb3DQEB\n"
    "AQUAA4IBDwAwggEKAoIBAQCvTIIJVSOl8p8fS3GITIducCLlHHuTLT3jlQXK2NKr\n"
    "5qiNS7notb62ooI5FCkkPCMA3xAwp/C5Jr9j/PRYlvM4O2Eq5DXbqZVfLr2AinN8\n"
    "LX7wdwMdu3H0oizB1x5nO9GxyDDI1wovHgUN3gDBLqohxBrfkCF1TNws2QG+XH5d\n"
    "e7V3nEFGiYez73gnNY4aSdMd27rpy5EvSL/hVO8TzNaMXSwmGa5iAae9zksnCLSf\n"
    "HW0E44ZNj/oiZYmeRgchw9Eouax05uGTiY3ShAt2pHYo7BYn/KmIXJpfo0oqmSXm\n"
    "kWyrmWMgtMITzYeUth+B7Yzah6WVKSoQbDGXIDlV8d4dAgMBAAGjbzBtMB0GA1Ud\n"
    "DgQWBBQFndHtXmEK9csyt2AtY1Bi77fw5DAfBgNVHSMEGDAWgBQFndHtXmEK9csy\n"
    "t2AtY1Bi77fw5DAPBgNVHRMBAf8EBTADAQH/MBoGA1UdEQQTMBGCCWxvY2FsaG9z\n"
    "dIcEfwAAATANBgkqhkiG9w0BAQsFAAOCAQEAcDuhgE9+lUJ544+T9942vAk0uQ0q\n"
    "euszeyXVf7FdO3Rl/Uy0OzeIzFrTZbI4EI7/XRLZXgKTE7mNhX9Br8mpKDbJO/2v\n"
    "MGCK8LZuLPwcqcHkv/GyGN0rlnJYbdZm6xrFRlyR2hOgYL88UqM97bY0qaPUBZFn\n"
    "QTE2aGDm2mslk+1Dcmopg+GxAdYOTFkZzUIC7ZsUgJYYzYAeuhQamvB8GVTak8mN\n"
    "Ri1J2/VfS7AfRe3tLDlM9rWtSS7v6AK2Ri2ZSNeC0BHFxjZ8rYDcEjE++MCvZhcw\n"
    "b0io6Tk2P9wcFc2PdBPXtcw0JiXS6sZuM0qsCodFpVB9aO5181leucHcnQ==\n"
    "-----END CERTIFICATE-----\n"
    ;

static const char FZ_EC_KEY[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEfEDvoeMKMxyE21L\n"
    "tcU92vdxfPpu1KQ+xq+pObuh+uehRANCAASh1gALJ56x5dYWh8HEFRN9FlyNpaat\n"
    "uSymkpEgNH7vgmfVkAJ4mdS1oWP4ot3SbfZNzcazJdR7hGAqbODAjiDD\n"
    "-----END PRIVATE KEY-----\n"
    ;

static const char FZ_EC_CERT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBuDCCAV+gAwIBAgIUXykOEw/wPSbx1U1x4rKRTV3JQ9EwCgYIKoZIzj0EAwIw\n"
    "FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEzMDExNTQ0MFoYDzIxMjYxMTA2\n"
    "MTE1NDQwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n"
    "PQMBBwNCAASh1gALJ56x5dYWh8HEFRN9FlyNpaatuSymkpEgNH7vgmfVkAJ4mdS1\n"
    "oWP4ot3SbfZNzcazJdR7hGAqbODAjiDDo4GMMIGJMB0GA1UdDgQWBBQ8zUADPm0x\n"
    "X5XFYoyhFRSSYHku1DAfBgNVHSMEGDAWgBQ8zUADPm0xX5XFYoyhFRSSYHku1DAP\n"
    "BgNVHRMBAf8EBTADAQH/MDYGA1UdEQQvMC2CCWxvY2FsaG9zdIIOKi5leGFtcGxl\n"
    "LnRlc3SHEAAAAAAAAAAAAAAAAAAAAAEwCgYIKoZIzj0EAwIDRwAwRAIgIa9tkNsm\n"
    "SCqTtB/EuLBjYc61BrKTZ2idZPpEzqRqnoECIGLZwhIf06b5U0ExzTheVzdxYIMF\n"
    "NbqD+et72ZAY0MmY\n"
    "-----END CERTIFICATE-----\n"
    ;

static const char FZ_EC_KEY_ENC[] =
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
    "MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAi8IBGzmRwwCQICCAAw\n"
    "DAYIKoZIhvcNAgkFADAdBglghkgBZQMEAQIEEP9Pyvp+EtzobY8dAl8KbRAEgZD5\n"
    "z9zi+0ZTLuEyeUMXx2771p4AMjIHjI5sN+WbqUM9TA7W+CnLJ1CHmrG6OpBqozRu\n"
    "hM+R3j/7V6fEksTE7gUxN10ndgGTruKFyGSPJQXuDEti0UL2I0VhSmRpELtxH8CF\n"
    "yN4KM1s8xyka/vt0HK8La9FoO/Jee/NrO7bH/EuUHx/qrokIv8y2vN3GnFWECU8=\n"
    "-----END ENCRYPTED PRIVATE KEY-----\n"
    ;

static const char FZ_CLIENT_KEY[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYs+WC3++B97TF7Pi\n"
    "ZK5XgIhxycoEz/HYzmj1GkGYodGhRANCAAThbaEhldZwva8M36m4MREZvna5AaDH\n"
    "DXBfBL+jbn/xTGmiKAPk2tYbLj4OaAb9i2LLiHrwpJ4S39LgFHp636xV\n"
    "-----END PRIVATE KEY-----\n"
    ;

static const char FZ_CLIENT_CERT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBpDCCAUqgAwIBAgIUSY8fGFyAEzsC5ohTVW+Gg1UZJ7YwCgYIKoZIzj0EAwIw\n"
    "GTEXMBUGA1UEAwwOY2xpZW50LmV4YW1wbGUwIBcNMjYxMTMwMTE1NDQwWhgPMjEy\n"
    "NjExMDYxMTU0NDBaMBkxFzAVBgNVBAMMDmNsaWVudC5leGFtcGxlMFkwEwYHKoZI\n"
    "zj0CAQYIKoZIzj0DAQcDQgAE4W2hIZXWcL2vDN+puDERGb52uQGgxw1wXwS/o25/\n"
    "8UxpoigD5NrWGy4+DmgG/Ytiy4h68KSeEt/S4BR6et+sVaNuMGwwHQYDVR0OBBYE\n"
    "FMxcVo0KnEre6aQEBKXdgc052UuQMB8GA1UdIwQYMBaAFMxcVo0KnEre6aQEBKXd\n"
    "gc052UuQMA8GA1UdEwEB/wQFMAMBAf8wGQYDVR0RBBIwEIIOY2xpZW50LmV4YW1w\n"
    "bGUwCgYIKoZIzj0EAwIDSAAwRQIhAIgnhekLsFo0XtzlTkAxQIcqTqUH0b3PxjOQ\n"
    "uwslby4GAiBffUCx+WR95K6k7FcKHamXs88hZZhed5k8WhfUP6TYrA==\n"
    "-----END CERTIFICATE-----\n"
    ;

static const char FZ_DH_PEM[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
    "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
    "87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
    "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
    "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
    "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
    "-----END DH PARAMETERS-----\n"
    ;

#endif /* FZ_CREDS_H */
