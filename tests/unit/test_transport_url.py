import pytest

from supervise.rpc.transport_url import BadTransportURL, kombu_urls, local_transport_url, mask


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rabbit://guest:guest@localhost:5672/", ["amqp://guest:guest@localhost:5672/%2F"]),
        ("rabbit://u:p@h//", ["amqp://u:p@h:5672/%2F"]),
        ("amqp://u:p@h:5673/nova", ["amqp://u:p@h:5673/nova"]),
        (
            "rabbit://a:1@h1:5672,b:2@h2:5673/v%2Fx",
            ["amqp://a:1@h1:5672/v%2Fx", "amqp://b:2@h2:5673/v%2Fx"],
        ),
        ("rabbit://h3/", ["amqp://h3:5672/%2F"]),
        ("rabbit://u:p@[::1]:5672/", ["amqp://u:p@[::1]:5672/%2F"]),
    ],
)
def test_oslo_urls_become_one_kombu_url_per_host(url, expected):
    assert kombu_urls(url) == expected


@pytest.mark.parametrize("url", ["kafka://h/", "http://h/", "rabbit://u:p@h1,/", "nonsense"])
def test_unusable_urls_are_refused_in_one_line_without_the_password(url):
    with pytest.raises(BadTransportURL) as error:
        kombu_urls(url.replace("u:p", "u:secret"))
    assert "\n" not in str(error.value) and "secret" not in str(error.value)


def test_mask_hides_every_password():
    url = "rabbit://a:pw1@h1:5672,b:pw2@h2:5672/v"
    assert mask(url) == "rabbit://a:****@h1:5672,b:****@h2:5672/v"
    assert mask("rabbit://h/") == "rabbit://h/"


def test_local_urls_name_an_absolute_file_and_pass_to_kombu_unchanged():
    assert kombu_urls("local:///var/lib/supervise/queue.db") == [
        "local:///var/lib/supervise/queue.db"
    ]
    assert local_transport_url("/var/lib/supervise") == "local:///var/lib/supervise/queue.db"
    assert local_transport_url("/a dir/x%y") == "local:///a%20dir/x%25y/queue.db"


@pytest.mark.parametrize(
    "url", ["local://queue.db", "local://host/q.db", "local:///var/lib/", "local:///q.db?x=1"]
)
def test_local_urls_that_name_no_absolute_file_are_refused(url):
    with pytest.raises(BadTransportURL, match="does not name a file: use local:///"):
        kombu_urls(url)
