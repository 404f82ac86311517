import re
import requests

def test_connection(s):
    assert s.run('true').succeeded, "Could not connect to server"

def test_is_django_installed(s):
    assert s.run('python -c "import django"').succeeded, "Django is not installed"

def test_is_project_created(s):
    assert s.run('[ -x /home/quiz/llama/ ]').succeeded, "Project is not created"

def test_hello_lama(s):
    try:
        r = requests.get("http://%s:8080/" % s.ip)
    except:
        assert False, "Service is not running"
    if r.status_code != 200 or not re.match(".*Hello, lama.*", r.text):
        assert False, "Incorrect response"
